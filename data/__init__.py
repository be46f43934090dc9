"""Test data: image folders and .npz batches (dataloader), and a resizer for preparing folders."""
