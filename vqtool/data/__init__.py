"""The datasets a profile names: CIFAR-10's archive (cifar10), image folders with their decode
cache (folders), and one entry point for both (datasets)."""
