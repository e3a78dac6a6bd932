"""The Gaussian-process limit of the Deep Image Prior and exact GP regression with its kernel."""
