"""Batch scoring: input validation, drift statistics (pure) and the batch that ties them to the marts."""
