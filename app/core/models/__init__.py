"""Trained runs under the runs folder, and the predictors loaded from them."""
