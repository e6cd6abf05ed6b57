"""What a run will cost before it starts: measured rates and the dry-run estimator."""
