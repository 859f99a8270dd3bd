"""An in-memory TransferQueue stand-in with the kv_batch_get / kv_batch_put calls the trainer uses."""

import torch
from tensordict import TensorDict
from transfer_queue import KVBatchMeta


class FakeTransferQueue:
    def __init__(self):
        self.rows: dict[tuple[str, str], dict] = {}

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None, data_parser=None):
        for i, key in enumerate(keys):
            row = self.rows.setdefault((partition_id, key), {})
            for name in fields.keys():
                value = fields.get(name)
                if getattr(value, "is_nested", False):
                    row[name] = value.unbind()[i]
                elif torch.is_tensor(value):
                    row[name] = value[i]
                else:
                    row[name] = list(value)[i]
        persisted = sorted(set.intersection(*(set(self.rows[(partition_id, key)]) for key in keys)))
        return KVBatchMeta(keys=list(keys), tags=[{} for _ in keys], partition_id=partition_id, fields=persisted)

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        out = {}
        for name in select_fields:
            values = [self.rows[(partition_id, key)][name] for key in keys]
            if torch.is_tensor(values[0]) and values[0].dim() >= 1:
                out[name] = torch.nested.as_nested_tensor(values, layout=torch.jagged)
            elif torch.is_tensor(values[0]):
                out[name] = torch.stack(values)
            else:
                out[name] = values
        tensors = {k: v for k, v in out.items() if torch.is_tensor(v)}
        td = TensorDict(tensors, batch_size=[len(keys)])
        for k, v in out.items():
            if not torch.is_tensor(v):
                from verl.utils import tensordict_utils as tu

                tu.assign_non_tensor_stack(td, k, v)
        return td
