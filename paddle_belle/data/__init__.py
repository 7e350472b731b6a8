"""BELLE training data: record shapes -> conversations -> token ids with BELLE's masking."""
from paddle_belle.data.dataset import DataSummary, build_dataset, load_conversations, pack
from paddle_belle.data.encode import IGNORE, encode_conversation
from paddle_belle.data.records import RecordError, to_conversation
from paddle_belle.data.sources import RELEASES, fetch_release, files_of

__all__ = [
    "DataSummary", "IGNORE", "RELEASES", "RecordError", "build_dataset", "encode_conversation", "fetch_release",
    "files_of", "load_conversations", "pack", "to_conversation",
]
