"""Reports: the scores and anomalies tables, event explanations, plots and run descriptions."""
