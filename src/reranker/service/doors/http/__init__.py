"""The HTTP/JSON front door: one module per vendor dialect (Cohere, Jina, Text Embeddings
Inference, llama.cpp, Mixedbread, Voyage, vLLM, NVIDIA NIM, and the model list), each with
its request and response models and a router whose handlers convert to the core's call and
back; :mod:`.app` mounts them, :mod:`.gate` stands in front of every route, :mod:`.server`
serves them. The core validates, limits, batches and scores.
"""
