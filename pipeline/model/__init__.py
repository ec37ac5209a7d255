"""The model: the Keras autoencoders, their training, and the NumPy twin for TensorFlow-free scoring."""
