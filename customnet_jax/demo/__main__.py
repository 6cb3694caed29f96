from customnet_jax.demo.recipe import main

main()
