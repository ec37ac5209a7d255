"""Reading data: files -> validated sensor table, data-quality report and the rows set aside."""
