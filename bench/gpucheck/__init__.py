"""GPU check: this server (Triton + the rank service, PyTorch encoders on the GPU) against
sentence-transformers' ``CrossEncoder`` on the same GPU, in one self-contained run.

Runs on an x86-64 Linux machine with an NVIDIA GPU, Python 3.12 and CUDA PyTorch,
transformers, tokenizers, sentence-transformers, grpcio and protobuf, with no network. What
such a machine lacks comes as a folder of wheels (``make gpu-kit``, at most 60 MiB), installed
with ``--no-deps`` into a private folder. The checkpoints are seeded, built here: a MiniLM-L6
shape and a BERT-base shape (the size of bge-reranker-base).

Measures: fp16 parity with CrossEncoder; workload (a), 100 documents a call, at concurrency
1, 4, 16 and 64 against ``CrossEncoder.rank`` with batch size 32 (as shipped) and the best of
32, 64 and 128; a 1000-document call; 64 callers x 10 documents; GPU memory peak; the
tokenizer's CPU time and Triton's queue and compute time per model; the FLOP bound from a
measured fp16 GEMM rate; eager against ``torch.compile`` (CUDA graphs) in-process; a
causal-LM reranker of Qwen3-Reranker-0.6B's shape (8 layers, bf16) behind its default prompt,
each call's shared prompt run once against the same model run whole, paired. Writes
``results.json`` and ``results.md`` into the output folder and stops every process it
started. ``--cpu`` runs the same steps on CPU at a small scale (fp32).
"""
