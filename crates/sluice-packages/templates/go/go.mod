module example.com/filter-template

go 1.24

require sluice.dev/sluice v0.1.0

replace sluice.dev/sluice => ../../../../sdk/go
