"""FAISS k-means into balanced clusters and the diverse prompt subsets drawn from them."""
