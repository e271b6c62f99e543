"""Run folders read back as tables: each run's status (`status`) and runs compared (`compare`), from the files a
run writes, without torch or Textual."""
