"""One run, along its pipeline: options -> feed (manifest, skip plan) -> request plans ->
admission -> send -> record. :mod:`batchscribe.run.engine` holds the pool that drives it."""
