"""Training rows: reading and splitting, the data check (duplicates, leakage, lengths), augmentation and the loss mask."""
