"""The instruction pool and the test sets: reading user files, the shipped data, leak-free splits."""
