//! Importing pretrained PyTorch checkpoints into ONNX embedding models (native only).
