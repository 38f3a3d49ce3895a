"""A run, along its pipeline: the plan (what to skip), the feed (the reader), the dry run."""
