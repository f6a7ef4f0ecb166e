"""The repository contract: what the build writes and both the Triton side and the service
read back (tensor names, model descriptions, typed Triton model parameters, request options).

Imports nothing of the project and no third-party package: every world may import it.
"""
