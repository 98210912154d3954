"""EDM maths for SVD training and sampling."""
