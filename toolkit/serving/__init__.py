"""`lmkit serve`: a model directory or an export behind the OpenAI completions and embeddings API.

    engine.py   ContinuousBatcher: one decoding loop over a lmkit.decoding Backend, which requests
                join and leave at every step (numpy only: the same code for PyTorch and onnxruntime)
    api.py      reading OpenAI-style request bodies and writing their responses (no server library)
    app.py      the starlette application and the uvicorn server (the `serve` extra)

Only app.py imports the server library, so the rest can be used (and tested) without it.
"""
