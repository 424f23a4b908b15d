"""Heavy work: spectra and behaviour of a checkpoint pair, written as Parquet."""
