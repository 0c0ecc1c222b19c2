"""The conditioning space: prompt pool, text encoders, embeddings store, k-means regions."""
