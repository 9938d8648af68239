-- a module of the job's own folder: it travels with the run
return {square = function(x) return x * x end}
