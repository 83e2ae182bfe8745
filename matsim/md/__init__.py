"""Molecular dynamics of liquid electrolytes: species library, box builder (rdkit + packmol), and analysis
(density, RDF and coordination, solvation shells, diffusion, conductivity, viscosity) with plots."""
