"""NVIDIA Triton Inference Server: a model repository from a bundle, and a server to run it.

- `config.py` writes `config.pbtxt` text from the card and the ONNX files' own signatures;
- `repository.py` lays out the repository (network models for Triton's `onnxruntime` and
  `tensorrt` backends, and `edgescreen`, a Python-backend model that runs this runtime's
  decode, quality gate, preprocessing and decisions around the network);
- `python_model.py` is that Python-backend model (it runs inside Triton's stub process);
- `server.py` starts the `tritonserver` binary shipped in `nvidia-pytriton`, on loopback;
- `client.py` sends image bytes and reads back the result `edgescreen screen --json` prints.

Nothing here imports Triton's packages at module import: `tritonclient` is needed only by
the client, `triton_python_backend_utils` exists only inside the server's stub.
"""
