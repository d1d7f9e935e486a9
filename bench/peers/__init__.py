"""The servers poolserve is measured against in ``bench/service.py``: what a user would run instead.

They are started by the benchmark as separate processes and never imported by the service.
"""
