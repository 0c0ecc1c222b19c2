"""The teacher bank: teacher outputs cached in HDF5 shards (DESIGN.md section 6)."""

from aria_hpc.bank.reader import Bank, BankBatch
from aria_hpc.bank.sources import BankSource, LiveTeacher, TeacherSource
from aria_hpc.bank.writer import build_bank

__all__ = ["Bank", "BankBatch", "BankSource", "LiveTeacher", "TeacherSource", "build_bank"]
