"""Generated protobuf code for the orderbook.v1 wire contract (see proto/). Do not edit: run `make proto`."""
