"""Preprocessing of the abalone pipeline, as aws/amazon-sagemaker-examples writes it
(ml_ops/sm-pipelines_preprocess_train_evaluate_batch_transform: code/preprocessing.py): the sex column one-hot encoded,
the measurements imputed and scaled, the rows shuffled and split 70/15/15 into train, validation and test (label first,
no header: the built-in XGBoost's CSV layout). Two changes: a fixed seed, so that a rerun splits the same rows, and a
`batch` output (the test rows without their label) for the batch transform, where AWS's example downloads a ready file."""
import os

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

# Since we get a headerless CSV file, we specify the column names here.
feature_columns_names = ["sex", "length", "diameter", "height", "whole_weight", "shucked_weight", "viscera_weight",
                         "shell_weight"]
label_column = "rings"
feature_columns_dtype = {"sex": str, **{name: np.float64 for name in feature_columns_names[1:]}}
label_column_dtype = {"rings": np.float64}

if __name__ == "__main__":
    base_dir = "/opt/ml/processing"
    df = pd.read_csv(f"{base_dir}/input/abalone-dataset.csv", header=None,
                     names=feature_columns_names + [label_column], dtype={**feature_columns_dtype, **label_column_dtype})
    numeric_features = feature_columns_names[1:]
    numeric_transformer = Pipeline(steps=[("imputer", SimpleImputer(strategy="median")), ("scaler", StandardScaler())])
    categorical_transformer = Pipeline(steps=[("imputer", SimpleImputer(strategy="constant", fill_value="missing")),
                                              ("onehot", OneHotEncoder(handle_unknown="ignore"))])
    preprocess = ColumnTransformer(transformers=[("num", numeric_transformer, numeric_features),
                                                 ("cat", categorical_transformer, ["sex"])])
    y = df.pop("rings")
    X_pre = preprocess.fit_transform(df)
    y_pre = y.to_numpy().reshape(len(y), 1)
    X = np.concatenate((y_pre, X_pre), axis=1)

    np.random.default_rng(42).shuffle(X)
    train, validation, test = np.split(X, [int(0.7 * len(X)), int(0.85 * len(X))])

    for name, rows in (("train", train), ("validation", validation), ("test", test), ("batch", test[:, 1:])):
        os.makedirs(f"{base_dir}/{name}", exist_ok=True)
        pd.DataFrame(rows).to_csv(f"{base_dir}/{name}/{name}.csv", header=False, index=False)
    print(f"split {len(X)} rows: {len(train)} train, {len(validation)} validation, {len(test)} test")
