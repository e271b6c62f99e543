"""Work before and after training: LR finder, export, compression."""
