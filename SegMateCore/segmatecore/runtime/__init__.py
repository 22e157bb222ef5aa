"""How a prepared network runs: devices, precision, the eager PyTorch preparation, the CPU
convolution fusion, OpenVINO, and the feature cache between the two inference passes."""
