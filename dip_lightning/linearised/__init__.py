"""The linearised-Laplace DIP (Antorán et al., TMLR 2023): a Gaussian-linear model around the
fitted network's convolution weights, its block prior, the marginal likelihood of its
hyperparameters and the predictive covariance of the image (exact or by sampling)."""
