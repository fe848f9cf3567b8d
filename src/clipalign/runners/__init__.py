"""Dataset-scale scans: streaming sources, the local engine, Ray Data, summaries."""
