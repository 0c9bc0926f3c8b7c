"""Built-in data sets: Fashion-MNIST, CIFAR-10/100, a folder of images, and a synthetic set for tests."""
