"""Decoding strategies, written once over a small backend interface.

    options.py        the options of each strategy (imports neither numpy nor torch)
    backend.py        the Backend protocol: prefill, step, max_length
    torch_backend.py  TorchBackend, over any lmkit decoder (the only module here that imports torch)
    common.py         Generation, prompt fitting and padding, and the token-by-token loop
    greedy.py         Greedy                    (registered as "greedy")
    sampling.py       Sampling                  (registered as "sample")
    beam.py           BeamSearch                (registered as "beam")

The strategies work on numpy arrays on the host, so the ONNX runtime reuses them without torch.
"""
