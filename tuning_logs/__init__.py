"""Tuning logs shipped with tvmsep: one meta-schedule database folder per target.

Installed as `tvmsep.tuning_logs` so compiled workloads find the tuned
schedules after a plain install; see `tvmsep.tuning_log`.
"""
