"""The model catalogue: which models exist, where their files are, downloading and installing them."""
