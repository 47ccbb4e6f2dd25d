"""The pure core: books, sequencing, history, resume rules, checksums.

Nothing in this package performs I/O, touches an event loop or reads a clock;
time arrives as arguments. Tests drive it directly.
"""
