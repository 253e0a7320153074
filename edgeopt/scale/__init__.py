"""Scale-out: sweeps of models x targets x precisions as jobs on Ray (or one after another), and boards that
join the cluster to run their device jobs (``edgeopt sweep``, ``edgeopt farm join``)."""
