"""Encoding and decoding of the orderbook.v1 wire contract.

The only package that imports the generated protobuf code (orderbook.v1).
"""
