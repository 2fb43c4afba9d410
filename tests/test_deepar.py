"""Local DeepAR: hyperparameter rules, channels, metrics, artifact, inference formats and entry points."""
import json
import subprocess
import sys

import pytest

from mlops.deepar import DeepARHyperparameters, HyperparameterError

REQUIRED = {"time_freq": "D", "context_length": "28", "prediction_length": "14", "epochs": "20"}


# --- hyperparameters -------------------------------------------------------------------------------

def test_defaults_are_sagemakers():
    hp = DeepARHyperparameters.from_strings(REQUIRED)
    assert (hp.time_freq, hp.context_length, hp.prediction_length, hp.epochs) == ("D", 28, 14, 20)
    assert hp.cardinality == "auto" and hp.num_dynamic_feat == "auto"
    assert hp.dropout_rate == 0.1 and hp.early_stopping_patience is None
    assert hp.embedding_dimension == 10 and hp.learning_rate == 1e-3
    assert hp.likelihood == "student-T" and hp.mini_batch_size == 128
    assert hp.num_cells == 40 and hp.num_layers == 2 and hp.num_eval_samples == 100
    assert hp.test_quantiles == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def test_every_optional_hyperparameter_parses_from_its_string():
    given = {**REQUIRED, "cardinality": "[3, 4]", "dropout_rate": "0.05", "early_stopping_patience": "3",
             "embedding_dimension": "8", "learning_rate": "1e-2", "likelihood": "negative-binomial",
             "mini_batch_size": "32", "num_cells": "30", "num_dynamic_feat": "2", "num_eval_samples": "50",
             "num_layers": "3", "test_quantiles": "[0.25, 0.5, 0.75]", "time_freq": "5min"}
    hp = DeepARHyperparameters.from_strings(given)
    assert hp.cardinality == (3, 4) and hp.num_dynamic_feat == 2 and hp.early_stopping_patience == 3
    assert hp.learning_rate == 0.01 and hp.likelihood == "negative-binomial" and hp.time_freq == "5min"
    assert hp.test_quantiles == (0.25, 0.5, 0.75)
    # to_strings gives back what SageMaker passes, and parses to the same value
    assert DeepARHyperparameters.from_strings(hp.to_strings()) == hp
    assert hp.to_strings()["cardinality"] == "[3, 4]"


@pytest.mark.parametrize("value", ["auto", "ignore", ""])
def test_cardinality_and_num_dynamic_feat_keywords(value):
    hp = DeepARHyperparameters.from_strings({**REQUIRED, "cardinality": value, "num_dynamic_feat": value})
    assert hp.cardinality == value and hp.num_dynamic_feat == value
    assert hp.uses_cat == (value == "auto") and hp.uses_dynamic_feat == (value == "auto")


@pytest.mark.parametrize("freq", ["D", "2D", "H", "6H", "W", "M", "3M", "min", "15min"])
def test_time_freq_accepts_sagemakers_frequencies(freq):
    assert DeepARHyperparameters.from_strings({**REQUIRED, "time_freq": freq}).time_freq == freq


BAD = [  # (name, value, words the message must contain)
    ("time_freq", "Q", "M, W, D, H or min"),
    ("time_freq", "0D", "M, W, D, H or min"),
    ("time_freq", "daily", "M, W, D, H or min"),
    ("context_length", "0", "positive integer"),
    ("context_length", "-3", "positive integer"),
    ("prediction_length", "14.5", "positive integer"),
    ("epochs", "ten", "positive integer"),
    ("cardinality", "[2, 0]", "array of positive integers"),
    ("cardinality", "[]", "array of positive integers"),
    ("cardinality", "2, 3", "array of positive integers"),
    ("cardinality", "[1.5]", "array of positive integers"),
    ("dropout_rate", "1.0", "less than 1"),
    ("dropout_rate", "-0.1", "at least 0"),
    ("dropout_rate", "none", "must be a number"),
    ("early_stopping_patience", "0", "positive integer"),
    ("embedding_dimension", "0", "positive integer"),
    ("learning_rate", "0", "positive number"),
    ("learning_rate", "nan", "finite"),
    ("likelihood", "student-t", "must be one of gaussian, beta, negative-binomial, student-T, deterministic-L1"),
    ("mini_batch_size", "0", "positive integer"),
    ("num_cells", "forty", "positive integer"),
    ("num_dynamic_feat", "-1", "auto, ignore, empty, or a positive integer"),
    ("num_eval_samples", "0", "positive integer"),
    ("num_layers", "0", "positive integer"),
    ("test_quantiles", "[0.1, 1.0]", "strictly between 0 and 1"),
    ("test_quantiles", "[]", "non-empty"),
    ("test_quantiles", "0.5", "JSON array"),
    ("test_quantiles", "[0.5, 0.5]", "twice"),
]


@pytest.mark.parametrize("name,value,rule", BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_each_rule_rejects_with_a_message_stating_it(name, value, rule):
    with pytest.raises(HyperparameterError) as caught:
        DeepARHyperparameters.from_strings({**REQUIRED, name: value})
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert repr(name) in message and repr(value) in message and rule in message
    assert caught.value.name == name and caught.value.value == value


@pytest.mark.parametrize("missing", ["time_freq", "context_length", "prediction_length", "epochs"])
def test_required_hyperparameters(missing):
    given = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(HyperparameterError, match=f"'{missing}': is required"):
        DeepARHyperparameters.from_strings(given)
    with pytest.raises(HyperparameterError, match=f"'{missing}': is required"):
        DeepARHyperparameters.from_strings({**given, missing: ""})


def test_unknown_name_is_refused_and_sagemaker_internal_names_are_ignored():
    with pytest.raises(HyperparameterError, match="is not a DeepAR hyperparameter; valid names are cardinality"):
        DeepARHyperparameters.from_strings({**REQUIRED, "learningrate": "0.1"})
    hp = DeepARHyperparameters.from_strings({**REQUIRED, "_tuning_objective_metric": "test:RMSE",
                                             "sagemaker_program": "x"})
    assert hp == DeepARHyperparameters.from_strings(REQUIRED)


def test_python_values_are_validated_too():
    assert DeepARHyperparameters("D", 28, 14, 5, cardinality=[2, 3]).cardinality == (2, 3)
    with pytest.raises(HyperparameterError, match="positive integer"):
        DeepARHyperparameters("D", 0, 14, 5)
    with pytest.raises(HyperparameterError, match="positive integer"):
        DeepARHyperparameters("D", True, 14, 5)


def test_importing_the_module_loads_no_heavy_library():
    code = ("import sys, mlops.deepar\n"
            "heavy = sorted(m for m in ('torch', 'gluonts', 'lightning', 'pytorch_lightning', 'mxnet') if m in sys.modules)\n"
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
