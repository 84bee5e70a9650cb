#compdef llmc

_llmc_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _LLMC_COMPLETE=complete_zsh llmc)
}

compdef _llmc_completion llmc
