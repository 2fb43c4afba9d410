"""Evaluation of the abalone pipeline, as aws/amazon-sagemaker-examples writes it
(ml_ops/sm-pipelines_preprocess_train_evaluate_batch_transform: code/evaluation.py): the trained model's mean squared
error on the test rows, written to /opt/ml/processing/evaluation/evaluation.json for the pipeline's PropertyFile.
One change: the model is read with Booster.load_model, not pickle.load, because SageMaker's XGBoost 1.3-1 and later
save it in XGBoost's own format ("Use XGBoost as a built-in algorithm", https://docs.aws.amazon.com/sagemaker/latest/dg/xgboost.html)."""
import json
import pathlib
import tarfile

import numpy as np
import pandas as pd
import xgboost
from sklearn.metrics import mean_squared_error

if __name__ == "__main__":
    model_path = "/opt/ml/processing/model/model.tar.gz"
    with tarfile.open(model_path) as tar:
        tar.extractall(path=".")
    model = xgboost.Booster()
    model.load_model("xgboost-model")

    df = pd.read_csv("/opt/ml/processing/test/test.csv", header=None)
    y_test = df.iloc[:, 0].to_numpy()
    df.drop(df.columns[0], axis=1, inplace=True)
    predictions = model.predict(xgboost.DMatrix(df.values))

    mse = mean_squared_error(y_test, predictions)
    std = np.std(y_test - predictions)
    report_dict = {"regression_metrics": {"mse": {"value": float(mse), "standard_deviation": float(std)}}}

    output_dir = "/opt/ml/processing/evaluation"
    pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)
    with open(f"{output_dir}/evaluation.json", "w") as f:
        f.write(json.dumps(report_dict))
    print(f"mse {mse:.4f} on {len(y_test)} test rows")
