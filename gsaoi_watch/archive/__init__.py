"""Archive re-reduction: plan raw directories into phases, run them on a Dask cluster."""
