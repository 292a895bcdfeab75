"""Model families: fine-tunes that share their large tensors with a base, served as one (docs/ARCHITECTURE.md)."""
