"""One rank of the data-parallel test: train as the config says, then save this rank's parameters."""
import sys

import numpy as np
import paddle

from paddle_belle.train import load_config, train

trainer = train(load_config(sys.argv[1]))
params = {name: p.numpy() for name, p in trainer.model.state_dict().items()}
np.savez(f"{sys.argv[2]}/rank{paddle.distributed.get_rank()}.npz", **params)
paddle.distributed.barrier()
