"""Word lists behind the task families.

Every lookup list was filtered against the embedded base model (SmolLM2-135M-Instruct, greedy):
an item is kept only if the base model's *verbose* answer already contains the right word
(e.g. it says 'The capital of Peru is Lima.'). So what the preference data has to teach is the
instruction (answer with one word, nothing else), not facts the model does not have.
`benchmarks/base_model_on_task.py --knowledge` re-runs that check (plain question, no format
instruction, lenient whole-word match).

Format: "key answer[/alternative...] [distractor]" items separated by "|"; parsed by `_table`.
"""

from __future__ import annotations


def _table(text: str) -> list[tuple[str, ...]]:
    rows = [item.strip() for item in " ".join(text.split()).split("|")]
    return [tuple(field.strip() for field in item.split(",")) for item in rows if item]


# country, capital (accepted spellings separated by "/"), a wrong-but-plausible city of that country
CAPITALS = _table("""
France,Paris,Lyon|Japan,Tokyo,Osaka|Germany,Berlin,Munich|Russia,Moscow,Kazan|China,Beijing,Shanghai|
Egypt,Cairo,Alexandria|Greece,Athens,Thessaloniki|the United Kingdom,London,Manchester|Ireland,Dublin,Cork|
Austria,Vienna,Salzburg|Poland,Warsaw,Krakow|Hungary,Budapest,Debrecen|Norway,Oslo,Bergen|
Sweden,Stockholm,Gothenburg|the Netherlands,Amsterdam,Rotterdam|Canada,Ottawa,Toronto|
Australia,Canberra,Sydney|Kenya,Nairobi,Mombasa|Peru,Lima,Cusco|Chile,Santiago,Valparaiso|
Cuba,Havana,Varadero|Thailand,Bangkok,Phuket|Indonesia,Jakarta,Surabaya|the Philippines,Manila,Cebu|
South Korea,Seoul,Busan|Iran,Tehran,Isfahan|Iraq,Baghdad,Basra|Syria,Damascus,Aleppo|
Lebanon,Beirut,Sidon|Saudi Arabia,Riyadh,Jeddah|Pakistan,Islamabad,Karachi|Afghanistan,Kabul,Kandahar|
Nepal,Kathmandu,Pokhara|Bangladesh,Dhaka,Chittagong|Nigeria,Abuja,Lagos|Ghana,Accra,Kumasi|
Senegal,Dakar,Touba|Ecuador,Quito,Guayaquil|Uruguay,Montevideo,Salto|Romania,Bucharest,Cluj|
Bulgaria,Sofia,Varna|Croatia,Zagreb,Split|Lithuania,Vilnius,Kaunas|Latvia,Riga,Jurmala|
Scotland,Edinburgh,Glasgow|Wales,Cardiff,Swansea|New Zealand,Wellington,Auckland|
Zimbabwe,Harare,Bulawayo|Uganda,Kampala,Entebbe|Sudan,Khartoum,Omdurman|Libya,Tripoli,Benghazi|
Qatar,Doha,Dubai|Taiwan,Taipei,Kaohsiung|the Czech Republic,Prague,Brno|Cyprus,Nicosia,Limassol|
Ukraine,Kyiv/Kiev,Lviv
""")

# word, opposite (accepted alternatives separated by "/"). Pairs that appear in both directions
# (hot/cold, cold/hot) share a split group, so a held-out prompt never has its mirror in train.
OPPOSITES = _table("""
hot,cold|big,small/little|tall,short|fast,slow|happy,sad/unhappy|up,down|left,right|open,closed/shut|
young,old|rich,poor|early,late|wet,dry|strong,weak|good,bad/evil|day,night|black,white|high,low|
long,short|thick,thin|loud,quiet/soft|true,false|win,lose|push,pull|buy,sell|alive,dead|above,below|
inside,outside|before,after|love,hate|north,south|east,west|summer,winter|heavy,light|first,last|
near,far|top,bottom|increase,decrease|war,peace|always,never|rough,smooth|friend,enemy/foe|
question,answer|dark,light/bright|soft,hard|give,take/receive|begin,end/finish|remember,forget|
rise,fall/sink/set|sweet,sour/bitter|on,off|enter,exit/leave|forward,backward/backwards/back|
guilty,innocent|brother,sister|husband,wife|father,mother|tight,loose|wrong,right/correct|
major,minor|positive,negative|minimum,maximum|visible,invisible|possible,impossible|agree,disagree|
odd,even|ancient,modern|future,past|sunrise,sunset|plus,minus|add,subtract|multiply,divide|
inhale,exhale|import,export|fat,thin/skinny/slim|cold,hot/warm|slow,fast/quick|sad,happy|
weak,strong|empty,full|night,day|white,black|low,high|south,north|west,east|winter,summer|
bottom,top|decrease,increase|never,always|smooth,rough|enemy,friend/ally|below,above|outside,inside|
after,before|hate,love|far,near|dead,alive
""")

# singular, plural (accepted alternatives separated by "/")
PLURALS = _table("""
mouse,mice|child,children|man,men|foot,feet|leaf,leaves|knife,knives|wolf,wolves|city,cities|
baby,babies|box,boxes|bus,buses/busses|cat,cats|book,books|house,houses|key,keys|fox,foxes|
thief,thieves|fly,flies|puppy,puppies|family,families|dish,dishes|glass,glasses|watch,watches|
story,stories|party,parties|hero,heroes|life,lives|country,countries|wife,wives|loaf,loaves|
bird,birds|tree,trees|car,cars|star,stars|girl,girls|toy,toys|day,days|boat,boats|dog,dogs|
egg,eggs|hand,hands|bag,bags|class,classes|kiss,kisses|wish,wishes|dress,dresses|peach,peaches|
lunch,lunches|cherry,cherries|body,bodies|army,armies|apple,apples|chair,chairs|table,tables|
window,windows|pencil,pencils|teacher,teachers|river,rivers|mountain,mountains|cloud,clouds|
bottle,bottles|candle,candles|monkey,monkeys|valley,valleys|kitten,kittens|student,students|
library,libraries|daisy,daisies
""")

# words to write in capital letters (copying task: nothing to know, only the format to follow)
UPPERCASE_WORDS = """
apple river garden window music yellow silver orange winter summer castle rabbit forest pencil
doctor planet bridge candle dragon pocket ticket butter monkey island market rocket jacket basket
circle flower guitar hammer kitten ladder letter mirror needle number office parrot pepper pillow
puzzle school shadow spider spring stone sugar table tiger tomato turtle violin wallet wizard zebra
anchor bottle button camera carpet cheese cookie desert engine farmer finger garage helmet
""".split()

# category (as written in the prompt), items a chosen answer draws from
BULLET_CATEGORIES: dict[str, list[str]] = {
    "fruits": "apple banana cherry grape mango orange pear peach plum lemon".split(),
    "vegetables": "carrot potato onion pea cabbage spinach broccoli lettuce pumpkin garlic".split(),
    "colors": "red blue green yellow purple orange pink black white brown".split(),
    "animals": "dog cat horse lion tiger elephant rabbit bear wolf zebra".split(),
    "sports": "soccer tennis basketball golf swimming cricket hockey rugby baseball boxing".split(),
    "musical instruments": "piano guitar violin drums flute trumpet cello harp saxophone clarinet".split(),
    "countries": "France Japan Brazil Canada Egypt India Spain Mexico Kenya Norway".split(),
    "drinks": "water tea coffee milk juice lemonade cocoa soda smoothie cider".split(),
    "vehicles": "car bus bicycle train truck boat airplane motorcycle tram scooter".split(),
    "birds": "eagle owl parrot sparrow robin penguin swan crow pigeon duck".split(),
    "flowers": "rose tulip daisy lily sunflower orchid violet lavender poppy iris".split(),
    "jobs": "doctor teacher farmer nurse pilot baker chef lawyer painter plumber".split(),
    "school subjects": "math history biology physics chemistry geography art music English French".split(),
    "kitchen tools": "knife spoon fork pan pot whisk ladle grater kettle spatula".split(),
    "pieces of clothing": "shirt jacket hat scarf dress skirt coat sock glove sweater".split(),
}

# JSON family values
PEOPLE = """Anna Ben Carla David Emma Felix Grace Hugo Irene Jack Kara Liam Maya Noah Olga Paul
Rosa Sam Tara Victor Wendy Yusuf Zoe Omar Lena Marco Nina Oscar Priya Theo""".split()
CITY_COUNTRY = _table("""
Lyon,France|Osaka,Japan|Munich,Germany|Milan,Italy|Seville,Spain|Porto,Portugal|Toronto,Canada|
Sydney,Australia|Florence,Italy|Mumbai,India|Valencia,Spain|Krakow,Poland|Bergen,Norway|
Glasgow,Scotland|Cork,Ireland|Salzburg,Austria|Busan,South Korea|Cusco,Peru|Mombasa,Kenya|
Alexandria,Egypt|Istanbul,Turkey|Geneva,Switzerland|Auckland,New Zealand|Shanghai,China|Lagos,Nigeria
""")
PRODUCTS = """lamp chair backpack kettle umbrella notebook clock mug blanket helmet toaster
mirror pillow keyboard bicycle camera jacket wallet candle teapot basket""".split()
PETS = [("cat", "black"), ("dog", "brown"), ("parrot", "green"), ("rabbit", "white"), ("hamster", "golden"),
        ("fish", "orange"), ("horse", "gray"), ("turtle", "green"), ("mouse", "white"), ("snake", "yellow")]

# starts_with family: topic (as written in the prompt), words that count as "on topic", a short sentence
TOPICS = [
    ("the ocean", ("ocean", "sea"), "the ocean covers most of the Earth."),
    ("the sun", ("sun",), "the sun is a star at the center of our solar system."),
    ("cats", ("cat",), "cats sleep for most of the day."),
    ("coffee", ("coffee",), "coffee is made from roasted beans."),
    ("rain", ("rain",), "rain gives plants the water they need."),
    ("bicycles", ("bicycle", "bike"), "bicycles are a cheap and healthy way to travel."),
    ("the moon", ("moon",), "the moon takes about a month to circle the Earth."),
    ("bees", ("bee",), "bees carry pollen from flower to flower."),
    ("books", ("book",), "books let you visit other worlds."),
    ("music", ("music",), "music can change how you feel."),
    ("trees", ("tree",), "trees give us shade and clean air."),
    ("snow", ("snow",), "snow is made of tiny ice crystals."),
    ("dogs", ("dog",), "dogs are loyal and friendly pets."),
    ("bread", ("bread",), "bread is made from flour, water and yeast."),
    ("the internet", ("internet",), "the internet connects computers around the world."),
    ("chess", ("chess",), "chess is a game of strategy for two players."),
    ("volcanoes", ("volcano",), "volcanoes form where melted rock reaches the surface."),
    ("elephants", ("elephant",), "elephants are the largest animals on land."),
    ("tea", ("tea",), "tea is one of the most popular drinks in the world."),
    ("gardening", ("garden", "gardening"), "gardening is a relaxing way to spend time outside."),
    ("the desert", ("desert",), "the desert gets very little rain."),
    ("owls", ("owl",), "owls hunt mostly at night."),
    ("honey", ("honey",), "honey is made by bees from the nectar of flowers."),
    ("rainbows", ("rainbow",), "rainbows appear when sunlight shines through raindrops."),
    ("penguins", ("penguin",), "penguins cannot fly, but they swim very well."),
    ("libraries", ("library", "libraries"), "libraries lend books to everyone for free."),
    ("apples", ("apple",), "apples grow on trees and come in many colors."),
    ("the wind", ("wind",), "the wind is air that moves."),
    ("sleep", ("sleep",), "sleep helps the body rest and recover."),
    ("soccer", ("soccer", "football"), "soccer is played with a round ball and two goals."),
    ("clocks", ("clock",), "clocks help us keep track of time."),
    ("whales", ("whale",), "whales are mammals that live in the sea."),
]
# opening phrases and whether the sentence after them starts with a capital letter
OPENINGS = [("Fun fact:", False), ("In short,", False), ("To be honest,", False), ("Did you know?", True),
            ("Here is one thing:", False), ("Simply put,", False)]
# ends_with family: closing phrases the reply must end with
CLOSINGS = ["That is all.", "Hope this helps!", "Thanks for asking!", "End of answer.", "Any other questions?",
            "Have a great day!"]

# plain_question family: (question, full answer, accepted answers "a/b", a wrong short answer).
# General knowledge outside every other family and outside dpokit.tasks.outside (no languages,
# currencies, painters, days/hours, water, oceans' sizes ...), so those questions stay a fair test.
PLAIN_FACTS: list[tuple[str, str, str, str]] = [
    ("How many legs does a spider have?", "A spider has eight legs.", "eight/8", "six"),
    ("What is the freezing point of water in Celsius?", "Water freezes at 0 degrees Celsius.", "0/zero", "32"),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun.", "Mercury", "Venus"),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system.",
     "Jupiter", "Saturn"),
    ("How many months are in a year?", "A year has twelve months.", "twelve/12", "ten"),
    ("What do bees make?", "Bees make honey.", "honey", "milk"),
    ("Which animal is known as the king of the jungle?", "The lion is known as the king of the jungle.", "lion",
     "tiger"),
    ("What is the largest mammal?", "The blue whale is the largest mammal.", "whale", "elephant"),
    ("How many continents are there?", "There are seven continents.", "seven/7", "five"),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet.", "Mars", "Venus"),
    ("What is the main ingredient of guacamole?", "The main ingredient of guacamole is avocado.", "avocado/avocados",
     "tomato"),
    ("How many minutes are in an hour?", "An hour has sixty minutes.", "sixty/60", "100"),
    ("What is the hardest natural substance?", "Diamond is the hardest natural substance.", "diamond/diamonds", "gold"),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong was the first person to walk on the Moon.",
     "Armstrong", "Gagarin"),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies.", "butterflies/butterfly/moths/moth",
     "bees"),
    ("Which gas do humans need to breathe?", "Humans need oxygen to breathe.", "oxygen", "helium"),
    ("How many players does a soccer team have on the field?", "A soccer team has eleven players on the field.",
     "eleven/11", "nine"),
    ("What color is a ripe banana?", "A ripe banana is yellow.", "yellow", "purple"),
    ("Which instrument has black and white keys?", "The piano has black and white keys.", "piano", "guitar"),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels.", "two/2", "three"),
    ("What is frozen water called?", "Frozen water is called ice.", "ice", "steam"),
    ("Which bird is a symbol of peace?", "The dove is a symbol of peace.", "dove", "eagle"),
    ("What is the closest star to Earth?", "The Sun is the closest star to Earth.", "Sun", "Sirius"),
    ("How many strings does a violin have?", "A violin has four strings.", "four/4", "six"),
    ("What is the largest organ of the human body?", "The skin is the largest organ of the human body.", "skin",
     "liver"),
    ("How many days are in a leap year?", "A leap year has 366 days.", "366", "365"),
    ("What shape has four equal sides and four right angles?", "A square has four equal sides and four right angles.",
     "square", "circle"),
    ("Who developed the theory of relativity?", "Albert Einstein developed the theory of relativity.", "Einstein",
     "Newton"),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au.", "Au", "Ag"),
    ("What is the tallest animal?", "The giraffe is the tallest animal.", "giraffe", "elephant"),
    ("In which country are the pyramids of Giza?", "The pyramids of Giza are in Egypt.", "Egypt", "Mexico"),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal.", "cheetah", "horse"),
    ("Which planet is famous for its rings?", "Saturn is the planet most famous for its rings.", "Saturn", "Mars"),
    ("What are baby cats called?", "Baby cats are called kittens.", "kittens/kitten", "puppies"),
    ("What are baby dogs called?", "Baby dogs are called puppies.", "puppies/puppy", "kittens"),
    ("Which season comes after winter?", "Spring comes after winter.", "spring", "autumn"),
    ("How many colors are in a rainbow?", "A rainbow has seven colors.", "seven/7", "five"),
    ("What is bread mainly made from?", "Bread is mainly made from flour.", "flour/wheat", "rice"),
    ("On which continent is Kenya?", "Kenya is in Africa.", "Africa", "Asia"),
    ("Which planet do we live on?", "We live on planet Earth.", "Earth", "Mars"),
    ("What is the largest country by area?", "Russia is the largest country by area.", "Russia", "China"),
    ("What does a thermometer measure?", "A thermometer measures temperature.", "temperature", "weight"),
    ("Which animal has a trunk?", "The elephant has a trunk.", "elephant/elephants", "giraffe"),
    ("Which organs do we breathe with?", "We breathe with our lungs.", "lungs/lung", "stomach"),
    ("What color are emeralds?", "Emeralds are green.", "green", "red"),
    ("How many legs does an insect have?", "An insect has six legs.", "six/6", "eight"),
    ("What do pandas mainly eat?", "Pandas mainly eat bamboo.", "bamboo", "fish"),
    ("Which metal is liquid at room temperature?", "Mercury is the metal that is liquid at room temperature.",
     "mercury", "iron"),
]
