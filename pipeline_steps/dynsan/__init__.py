"""DynSAN: token-level dynamic self-attention for multi-passage reading comprehension
(Zhuang & Wang, ACL 2019). See docs/dynsan.md."""
