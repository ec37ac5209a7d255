"""Entry point MLflow runs to load the registered model (a model from code: nothing pickled).

Not imported by the package; ``tracking.register_model`` logs this file as the pyfunc's code.
"""

from mlflow.models import set_model

from pipeline.serving import AnomalyModel

set_model(AnomalyModel())
