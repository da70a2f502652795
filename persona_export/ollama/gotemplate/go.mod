module persona-export/gotemplate

go 1.18
