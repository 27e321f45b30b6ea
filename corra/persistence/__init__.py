"""The state store: snapshots of every process in LMDB, written with group commit, and the
codec that turns records into bytes and back. Generic over record types: it knows nothing of
actors or backends."""

from corra.persistence._codec import Codec as Codec
from corra.persistence._indexes import IndexPage as IndexPage
from corra.persistence._indexes import IndexRange as IndexRange
from corra.persistence._indexes import IndexTerm as IndexTerm
from corra.persistence._indexes import encode_terms as encode_terms
from corra.persistence._indexes import group_prefix as group_prefix
from corra.persistence._indexes import join_terms as join_terms
from corra.persistence._indexes import term_template as term_template
from corra.persistence._keyed import QuarantinedRecord as QuarantinedRecord
from corra.persistence._lmdb import CorruptSnapshot as CorruptSnapshot
from corra.persistence._lmdb import SnapshotCounts as SnapshotCounts
from corra.persistence._lmdb import StoreReader as StoreReader
from corra.persistence._lmdb import open_store_readonly as open_store_readonly
from corra.persistence._store import Store as Store
from corra.persistence._store import StoreStatistics as StoreStatistics
from corra.persistence._store import open_store as open_store
from corra.persistence._writes import PendingSave as PendingSave
